//! Recording fake of `Dataplane`.
