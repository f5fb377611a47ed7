from django.apps import AppConfig


class NotifyConfig(AppConfig):
    name = "notify"
    verbose_name = "Notify"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Registers the system checks and the setting_changed receivers, and connects the
        # revocations that notify makes by itself (logout, password, groups, staff).
        from notify import checks, revocation, signals  # noqa: F401

        revocation.connect()
