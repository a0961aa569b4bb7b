pub mod headlamp;
