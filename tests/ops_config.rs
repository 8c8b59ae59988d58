//! Operator commands (being written).
