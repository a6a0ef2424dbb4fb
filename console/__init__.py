"""The ops console: the operation centre's web view of alerts, cases, map and trends (`lifeline console`)."""
