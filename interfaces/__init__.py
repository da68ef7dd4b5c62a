"""workledger: an event-sourced ledger of workers, slots and utilization."""
