//! iptables implementation of `Firewall`.
