//! The fleet: daemons sharing one ledger.
