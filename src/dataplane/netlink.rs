//! rtnetlink implementation of `Dataplane`.
