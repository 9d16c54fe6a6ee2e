"""Dashboards and reports: one-pass feature statistics, dashboard data, static HTML pages."""
