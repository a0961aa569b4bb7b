pub mod console_events;
pub mod dashboard;
pub mod dashboard_view;
pub mod headlamp;
pub mod notifications;
