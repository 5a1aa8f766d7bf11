"""The heavy stages as work items that any worker can run, and the executors that run them."""
