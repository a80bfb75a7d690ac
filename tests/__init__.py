"""etool's tests: a package, so that they share helpers (tests/support/) by import, never by sys.path."""
