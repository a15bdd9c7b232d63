//! Finding what runs on the node and what it links: today, the TLS libraries of traced
//! processes (`libssl`).
pub mod libssl;
