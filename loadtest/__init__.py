"""Black-box load tests of bankrace: Locust users, the race report, the mode comparison.

Everything here talks to the service over HTTP only; nothing imports `service`.
The pure modules (`scenarios`, `tally`, `reconcile`, `comparison_report`) import
neither Locust nor gevent, so they can be unit-tested in any process.
"""
