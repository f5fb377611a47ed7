"""The soak harness: proof that "nothing is lost" under faults.

``python -m tests.soak --duration 60`` (``make soak``) starts Redis, a database, two daphne
processes (with the default authorization policy) and three publishers; about 200 clients,
two thirds on SSE and a third on the WebSocket transport (``--websocket-share``), subscribe
to random channels, drop their connections at random moments and resume with their cursor
on either server, while Redis is restarted and killed, a server is killed and another
stopped, and one client of each transport stops reading. Some clients are logged in
(``tests.soak.accounts``): they read their user's channel and keep reopening it, while
their users are logged out, revoked and given new passwords. At the end every client's
received sequence is checked against the database and the revocations, and the summary
gives each transport's verdict, connections, endings and revocations:

    soak: N deliveries, 0 lost, 0 duplicated, 0 reordered, 0 foreign, 0 phantom

and the exit status is non-zero unless all five counts are 0. ``tests/test_soak.py`` runs it
for 15 s as part of the suite.
"""
