pub mod dashboard;
pub mod dashboard_view;
pub mod headlamp;
pub mod notifications;
