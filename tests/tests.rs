//! One integration-test binary; each module is one area. Shared builders live in `support`.

#[macro_use]
mod support;

mod access;
mod acme;
mod agent;
mod certs_e2e;
mod cli;
mod cloudflare;
mod companion;
mod compose;
mod dashboard;
mod docker_faults;
mod docker_labels;
mod edge;
mod follow;
mod golden;
mod injection;
mod insight;
mod labels_data;
mod load;
mod permissions;
mod policies;
mod readme_policies;
mod scripts;
mod status;
mod swarm;
mod watch;
