#!/bin/busybox sh
# PID 1 of the vm-test guest: mounts a pure cgroup v2 system, runs every scenario listed in /scenarios (one per line:
# `name workload limit_bytes seconds sample_bytes flags args...`, flags being more leaktrace arguments separated by
# commas, or `-`) under leaktrace, and prints what the host checks between LT-* markers
# on the serial console. The host parses this output; it never trusts an exit code from the guest.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp stays the initramfs's own: a workload's library may lie there (a checkout under /tmp, found by rpath).
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
echo "LT-KERNEL $(uname -r)"
echo +memory > /sys/fs/cgroup/cgroup.subtree_control

while read -r name workload limit seconds sample_bytes flags args; do
    extra=$(echo "$flags" | tr , ' ')
    [ "$flags" = - ] && extra=
    cg=/sys/fs/cgroup/lt-vm-$name
    mkdir "$cg"
    echo "$limit" > "$cg/memory.max"
    [ -e "$cg/memory.swap.max" ] && echo 0 > "$cg/memory.swap.max"
    echo "LT-BEGIN $name"
    start=$(cut -d' ' -f1 /proc/uptime)
    # Bounded: a hung tracer fails its scenario instead of the whole guest.
    timeout $((seconds + 90)) /opt/leaktrace --cgroup "$cg" --duration "$seconds" --interval 1 --sample-bytes "$sample_bytes" $extra --output "/tmp/out-$name" > "/tmp/lt-$name.log" 2>&1 &
    lt=$!
    # The workload starts only once the programs are attached, as in the host e2e tests.
    i=0
    while ! grep -q attached "/tmp/lt-$name.log" && kill -0 $lt 2>/dev/null && [ $i -lt 1200 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    sh -c "echo \$\$ > $cg/cgroup.procs && exec /opt/workloads/$workload $args" &
    wl=$!
    wait $lt
    echo "LT-LEAKTRACE-EXIT $?"
    if kill -0 $wl 2>/dev/null; then
        echo "LT-WORKLOAD-ALIVE 1"
        kill -9 $wl
    else
        echo "LT-WORKLOAD-ALIVE 0"
    fi
    wait $wl
    echo "LT-WORKLOAD-EXIT $?"
    echo "LT-WORKLOAD-PID $wl"
    echo "LT-SECONDS $(awk -v s="$start" '{print $1 - s}' /proc/uptime)"
    grep oom_kill "$cg/memory.events" | sed 's/^/LT-EVENTS /'
    sed 's/^/LT-LOG /' "/tmp/lt-$name.log"
    if [ -f "/tmp/out-$name/report.json" ]; then
        echo "LT-REPORT-BEGIN"
        cat "/tmp/out-$name/report.json"
        echo
        echo "LT-REPORT-END"
    fi
    rmdir "$cg"
    echo "LT-END $name"
done < /scenarios
echo "LT-DONE"
poweroff -f
