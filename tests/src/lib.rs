//! Integration-test support: real servers on loopback.
