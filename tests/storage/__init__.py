"""Storage conformance suite: every test runs against each adapter through the ``store`` fixture."""
