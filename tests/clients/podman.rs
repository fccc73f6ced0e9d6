//! podman 4.3, rootful (`--runtime PATH`) and rootless (the test user, its subids).

use crate::harness::Client;
use crate::ops;

ops! { Client::Podman;
    podman_run_rm_exit_code: ["!run --rm {img} sh -c 'echo out; exit 3'"];
    podman_run_rm_missing_command: ["!run --rm {img} /no/such/command"];
    podman_exec_long: ["rc:run -d --name {name} {img} sleep 60", "exec {name} sh -c 'sleep 2; echo ok'"];
    podman_exec_user: ["rc:run -d --name {name} {img} sleep 60", "exec -u 1000 {name} sh -c 'sleep 1; id -u'"];
    podman_exec_tty: ["rc:run -d --name {name} {img} sleep 60", "pty:exec -it {name} sh -c 'sleep 2; tty >/dev/null && echo tty ok'"];
    podman_logs: ["run --name {name} {img} sh -c 'echo one; echo two'", "logs {name}"];
    podman_top: ["rc:run -d --name {name} {img} sleep 60", "top {name} user args"];
    podman_stop: ["rc:run -d --name {name} {img} sleep 60", "rc:stop -t 1 {name}", "inspect -f '{{.State.Status}} {{.State.ExitCode}}' {name}"];
    podman_kill: ["rc:run -d --name {name} {img} sleep 60", "rc:kill {name}", "wait {name}", "inspect -f '{{.State.Status}}' {name}"];
    podman_pause_unpause: ["rc:run -d --name {name} {img} sleep 60", "rc:pause {name}", "inspect -f '{{.State.Status}}' {name}", "rc:unpause {name}", "inspect -f '{{.State.Status}}' {name}"];
    podman_rm: ["rc:run -d --name {name} {img} sleep 60", "rc:rm -f -t 0 {name}", "!container exists {name}"];
    podman_user: ["run --rm --user 1000:1000 {img} id"];
    podman_read_only: ["!run --rm --read-only {img} sh -c 'touch /x 2>/dev/null; echo $?; touch /tmp/x && echo tmp ok'"];
    podman_cap_drop_all: ["run --rm --cap-drop all {img} grep Cap /proc/self/status"];
    podman_memory: ["run --rm --memory 64m {img} cat /sys/fs/cgroup/memory/memory.limit_in_bytes"];
    podman_pids_limit: ["run --rm --pids-limit 42 {img} cat /sys/fs/cgroup/pids/pids.max"];
    podman_cpus: ["run --rm --cpus 0.5 {img} cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us /sys/fs/cgroup/cpu/cpu.cfs_period_us"];
    podman_device: ["run --rm --device /dev/zero:/dev/myzero {img} sh -c 'head -c 4 /dev/myzero | wc -c; stat -c %t:%T /dev/myzero'"];
    podman_privileged: ["run --rm --privileged {img} sh -c 'grep CapEff /proc/self/status; ls /dev/null /dev/tty; head -c 2 /dev/zero | wc -c'"];
    podman_userns_auto: ["run --rm --userns=auto {img} sh -c 'id -u; wc -l < /proc/self/uid_map'"];
}

ops! { Client::PodmanRootless;
    podman_rootless_run_rm: ["!run --rm {img} sh -c 'id -u; exit 3'"];
    podman_rootless_exec: ["rc:run -d --name {name} {img} sleep 60", "exec {name} sh -c 'sleep 2; echo ok'"];
    podman_rootless_keep_id: ["run --rm --userns=keep-id {img} id -u"];
    podman_rootless_uidmap: ["run --rm --uidmap 0:1:1000 {img} sh -c 'id -u; cat /proc/self/uid_map'"];
    podman_rootless_privileged: ["run --rm --privileged {img} sh -c 'grep CapEff /proc/self/status; ls /dev/null /dev/tty'"];
    podman_rootless_network_none: ["run --rm --network none {img} ls /sys/class/net"];
    podman_rootless_device: ["run --rm --device /dev/zero:/dev/myzero {img} sh -c 'head -c 4 /dev/myzero | wc -c'"];
}
