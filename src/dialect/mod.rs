pub mod console;
pub mod console_events;
pub mod console_sub;
pub mod console_work;
pub mod dashboard;
pub mod dashboard_view;
pub mod headlamp;
pub mod notifications;
