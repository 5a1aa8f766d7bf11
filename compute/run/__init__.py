"""One run end to end: configuration, the declared stage list, table building, what-if on a published run."""
