from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "notify"
    verbose_name = "Notify"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks, the setting_changed receivers and the revocation of
        # a user's streams on logout.
        from notify import checks, revocation, signals  # noqa: F401
