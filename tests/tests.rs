//! One integration-test binary; each module is one area. Shared builders live in `support`.

mod support;

mod agent;
mod cli;
mod docker_labels;
mod golden;
mod injection;
