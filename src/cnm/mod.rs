//! The Docker side: wire types, the HTTP router, error mapping. No kernel calls here.
