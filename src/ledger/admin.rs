//! Record administration for the operator commands (being written).
