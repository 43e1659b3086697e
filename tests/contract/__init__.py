"""Independent contract tests: fedloom checked against the written user-facing contract."""
