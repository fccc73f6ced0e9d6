//! containerd 1.6's `ctr` (the path Kubernetes' containerd takes): `run --runc-binary PATH`.

use crate::harness::Client;
use crate::ops;

ops! { Client::Ctr;
    ctr_run_rm_exit_code: ["!run --rm {img} {name} sh -c 'echo out; exit 4'"];
    ctr_run_d_exec_long: ["rc:run -d {img} {name} sleep 60", "task exec --exec-id e1 {name} sh -c 'sleep 2; echo ok'"];
    ctr_exec_user: ["rc:run -d {img} {name} sleep 60", "task exec --exec-id e1 --user 1000 {name} sh -c 'sleep 1; id -u'"];
    ctr_task_ps: ["rc:run -d {img} {name} sleep 60", "lines:task ps {name}"];
    ctr_pause_resume: ["rc:run -d {img} {name} sleep 60", "rc:task pause {name}", "last:task ls", "rc:task resume {name}", "last:task ls"];
    ctr_task_kill_delete: ["rc:run -d {img} {name} sleep 60", "rc:task kill -s KILL {name}", "until=STOPPED:last:task ls", "rc:task delete {name}", "last:task ls"];
}
