pub mod headlamp;
pub mod notifications;
