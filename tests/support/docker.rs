//! Docker test support (being written).
