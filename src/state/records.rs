//! Records of networks and endpoints (filled by the driver).
