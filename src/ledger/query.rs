//! Read queries for the operator commands (being written).
