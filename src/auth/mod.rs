//! Who a client is: credentials from the upgrade request, and the policy on
//! where requests may come from.

pub mod credentials;
pub mod jwt;
pub mod origin;
pub mod policy;
pub mod recheck;
pub mod review;
pub mod secret;
