//! docker 20.10 (`docker.io`): dockerd started with `--add-runtime warren=PATH`.

use crate::harness::Client;
use crate::ops;

const CGROUP: &str = "cgroup helper: docker's blockIO weight 0 / cpu.shares 0 mean unset";
const CGROUP_PAUSE: &str =
    "cgroup helper (docker's blockIO weight 0) and cli helper (runc pause/resume)";
const CGROUP_PS: &str =
    "cgroup helper (docker's blockIO weight 0) and cli helper (runc ps --format json)";

ops! { Client::Docker;
    docker_run_rm_exit_code: ["!run --rm {img} sh -c 'echo out; exit 5'"] known CGROUP;
    docker_cpu_shares_unset: ["run --rm {img} cat /sys/fs/cgroup/cpu/cpu.shares"] known CGROUP;
    docker_exec: ["rc:run -d --name {name} {img} sleep 60", "exec {name} sh -c 'sleep 2; echo ok'"] known CGROUP;
    docker_top: ["rc:run -d --name {name} {img} sleep 60", "last:top {name}"] known CGROUP_PS;
    docker_pause: ["rc:run -d --name {name} {img} sleep 60", "rc:pause {name}", "inspect -f '{{.State.Status}}' {name}", "rc:unpause {name}", "inspect -f '{{.State.Status}}' {name}"] known CGROUP_PAUSE;
}
