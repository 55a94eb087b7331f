"""What the tests share that is not a fixture: imported as ``support.<module>``."""
