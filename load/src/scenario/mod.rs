//! The scenarios: what each one does to the servers, on top of the shared
//! [`exchange`] machinery.

pub mod churn;
pub mod connections;
pub mod exchange;
pub mod fanout;
pub mod relay;
