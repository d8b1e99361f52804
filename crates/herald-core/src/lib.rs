//! Core types (being written).
