//! The orchestration: one function per CNM operation.
