//! docker 20.10 (`docker.io`): dockerd started with `--add-runtime warren=PATH`.

use crate::harness::Client;
use crate::ops;

ops! { Client::Docker;
    docker_run_rm_exit_code: ["!run --rm {img} sh -c 'echo out; exit 5'"];
    docker_cpu_shares_unset: ["run --rm {img} cat /sys/fs/cgroup/cpu/cpu.shares"];
    docker_exec: ["rc:run -d --name {name} {img} sleep 60", "exec {name} sh -c 'sleep 2; echo ok'"];
    docker_top: ["rc:run -d --name {name} {img} sleep 60", "last:top {name}"];
    docker_pause: ["rc:run -d --name {name} {img} sleep 60", "rc:pause {name}", "inspect -f '{{.State.Status}}' {name}", "rc:unpause {name}", "inspect -f '{{.State.Status}}' {name}"];
}
