//! Recording fake of `Firewall`.
