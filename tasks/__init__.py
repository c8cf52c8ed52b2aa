"""Plain functions the flows wire together; each is testable without Prefect."""
