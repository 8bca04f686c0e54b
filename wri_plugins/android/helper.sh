# florete-agent android bridge: the helper that runs on the phone, in Termux (POSIX sh only).
#
# The agent installs it as BASE/bin/helper-<digest>.sh and runs it over SSH:
#     exec sh HELPER BASE COMMAND ARGS...
# Each task has a directory BASE/tasks/<task id>/ holding
#     env             export lines of the task's environment (0600)
#     wd              the working directory
#     umask           the login's umask, the workload's (the helper's own files are 0600)
#     started         wall-clock start, seconds since the epoch
#     pid             "PID START BOOT_ID" of the task's watcher (this script, command run)
#     wpid            "PID START" of the workload (START: clock ticks after boot, /proc/PID/stat)
#     stdout.N        CRI log records (<RFC 3339 time> <stream> <F|P> <text>), N counting up
#     stderr.N        from 0 as the files rotate
#     exit            "CODE FINISHED_AT" once the workload ended and its output is written
# A command's exit status: 0 done, 2 usage or internal failure, 3 the task exists, 4 executable
# not found, 5 bad working directory, 6 no such task, 7 the task is not running; the message is
# on stderr.
set -u

base=$1
cmd=$2
shift 2
case $base in /*) ;; *) base=$PWD/$base ;; esac
self=$0
case $self in /*) ;; *) self=$PWD/$self ;; esac
tasks=$base/tasks
login_umask=$(umask)
umask 077 # the task files (environment, logs) are the user's alone

fail() {
    code=$1
    shift
    printf '%s\n' "$*" >&2
    exit "$code"
}

start_ticks() { # PID: print its start time in clock ticks after boot; false when gone or a zombie
    { read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
    st=${st##*") "}
    set -- $st
    [ "$1" != Z ] || return 1
    printf '%s\n' "${20}"
}

alive() { # PID START: true while that very process runs (a reused pid has another start time)
    [ -n "$1" ] && [ "$1" != 0 ] && t=$(start_ticks "$1") && [ "$t" = "$2" ]
}

boot_id() {
    cat /proc/sys/kernel/random/boot_id 2>/dev/null || echo unknown
}

now() {
    date +%s.%N
}

in_path() { # NAME: true when one of $PATH's directories holds an executable file NAME
    set -f
    old_ifs=$IFS
    IFS=:
    for dir in $PATH; do
        if [ -f "${dir:-.}/$1" ] && [ -x "${dir:-.}/$1" ]; then
            IFS=$old_ifs
            return 0
        fi
    done
    IFS=$old_ifs
    return 1
}

task_dir() { # ID: set d to the task's directory; fail 6 when it does not exist
    d=$tasks/$1
    [ -d "$d" ] || fail 6 "no task $1 on the phone"
}

read_pids() { # set p pst pb (watcher) and w wst (workload) from the task's files in $d
    p='' pst='' pb='' w='' wst=''
    if [ -r "$d/pid" ]; then read -r p pst pb <"$d/pid"; fi
    if [ -r "$d/wpid" ]; then read -r w wst <"$d/wpid"; fi
}

task_state() { # ID: print "ID gone", "ID running WPID STARTED", "ID exited CODE FINISHED WPID
    # STARTED" or "ID lost WPID STARTED" (lost: no process left and no exit record)
    d=$tasks/$1
    if [ ! -d "$d" ]; then
        echo "$1 gone"
        return
    fi
    started=0
    if [ -r "$d/started" ]; then read -r started <"$d/started"; fi
    read_pids
    if [ -r "$d/exit" ]; then
        read -r code fin <"$d/exit"
        echo "$1 exited $code $fin ${w:-0} $started"
    elif [ "$pb" = "$(boot_id)" ] && { alive "$p" "$pst" || alive "$w" "$wst"; }; then
        echo "$1 running ${w:-0} $started"
    elif [ -r "$d/exit" ]; then # it ended between the two looks
        read -r code fin <"$d/exit"
        echo "$1 exited $code $fin ${w:-0} $started"
    else
        echo "$1 lost ${w:-0} $started"
    fi
}

stamp() { # STREAM MAX_BYTES FILES_KEPT: copy stdin to STREAM.N as CRI records
    n=0
    size=0
    while :; do
        tag=F
        if ! IFS= read -r line; then
            [ -n "$line" ] || break
            tag=P
        fi
        printf '%s %s %s %s\n' "$(date -u +%Y-%m-%dT%H:%M:%S.%NZ)" "$1" "$tag" "$line" >>"$1.$n"
        size=$((size + ${#line} + 48))
        if [ "$size" -ge "$2" ]; then
            n=$((n + 1))
            size=0
            rm -f "$1.$((n - $3 - 1))"
        fi
        [ "$tag" = F ] || break
    done
}

fetch_stream() { # STREAM GEN OFFSET TAIL: print "@STREAM END_GEN END_OFFSET LENGTH" and LENGTH
    # bytes: the stream's records after OFFSET in file STREAM.GEN (TAIL >= 0: only the last TAIL)
    s=$1 g=$2 off=$3
    endg=$g endoff=$off last=-1
    for f in "$d/$s".*; do
        n=${f##*.}
        case $n in '' | *[!0-9]*) continue ;; esac
        [ -e "$f" ] && [ "$n" -gt "$last" ] && last=$n
    done
    tmp=$d/.fetch.$$
    : >"$tmp"
    i=$g
    while [ "$i" -le "$last" ]; do
        f=$d/$s.$i
        if [ -e "$f" ]; then
            size=$(($(wc -c <"$f")))
            skip=0
            [ "$i" -ne "$g" ] || skip=$off
            if [ "$size" -gt "$skip" ]; then
                tail -c +$((skip + 1)) "$f" | head -c $((size - skip)) >>"$tmp"
            fi
            endg=$i endoff=$size
        fi
        i=$((i + 1))
    done
    if [ "$4" -ge 0 ]; then
        tail -n "$4" "$tmp" >"$tmp.t" && mv -f "$tmp.t" "$tmp"
    fi
    echo "@$s $endg $endoff $(($(wc -c <"$tmp")))"
    cat "$tmp"
    rm -f "$tmp"
}

case $cmd in
probe) # facts about the phone, one KEY=VALUE a line
    missing=''
    for tool in setsid mkfifo date kill cat head tail wc rm mv mkdir sleep uname; do
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
    done
    echo "missing=${missing# }"
    case $(date +%N 2>/dev/null) in '' | *[!0-9]*) echo "nanoseconds=no" ;; *) echo "nanoseconds=yes" ;; esac
    echo "machine=$(uname -m)"
    echo "kernel=$(uname -r)"
    echo "hostname=$(uname -n)"
    echo "boot_id=$(boot_id)"
    echo "uid=$(id -u)"
    echo "gid=$(id -g)"
    echo "cpus=$(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
    echo "memory_kib=$(sed -n 's/^MemTotal: *\([0-9]*\) kB$/\1/p' /proc/meminfo 2>/dev/null)"
    if command -v am >/dev/null 2>&1; then echo "am=yes"; else echo "am=no"; fi
    if command -v getprop >/dev/null 2>&1; then
        echo "android=$(getprop ro.build.version.release)"
        echo "sdk=$(getprop ro.build.version.sdk)"
        echo "model=$(getprop ro.product.model)"
    fi
    echo "prefix=${PREFIX:-}"
    ;;
start) # ID WORKDIR (empty: $HOME) MAX_BYTES FILES_KEPT ARGV...; stdin: the env file.
    # Print the pid files and the start time: "PID START BOOT_ID WPID WSTART STARTED"
    [ $# -ge 5 ] || fail 2 "usage: start ID WORKDIR MAX_BYTES FILES_KEPT ARGV..."
    id=$1 wd=${2:-$HOME} max=$3 keep=$4
    shift 4
    d=$tasks/$id
    mkdir -p "$tasks" || fail 2 "cannot create $tasks"
    mkdir "$d" 2>/dev/null || fail 3 "task $id already exists on the phone ($d)"
    if ! cat >"$d/env"; then
        rm -rf "$d"
        fail 2 "cannot write $d/env"
    fi
    printf '%s\n' "$wd" >"$d/wd"
    echo "$login_umask" >"$d/umask"
    (
        . "$d/env"
        cd "$wd" 2>/dev/null || exit 5
        case $1 in
        */*) [ -f "$1" ] && [ -x "$1" ] || exit 4 ;;
        *) in_path "$1" || exit 4 ;;
        esac
    )
    case $? in
    0) ;;
    5)
        rm -rf "$d"
        fail 5 "working directory $wd does not exist on the phone"
        ;;
    *)
        rm -rf "$d"
        fail 4 "executable $1 not found on the phone"
        ;;
    esac
    now >"$d/started"
    setsid sh "$self" "$base" run "$id" "$max" "$keep" "$@" </dev/null >/dev/null 2>"$d/watcher.err" &
    i=0
    while [ ! -s "$d/wpid" ]; do
        i=$((i + 1))
        if [ -e "$d/failed" ] || [ "$i" -gt 400 ]; then
            why=$(cat "$d/watcher.err" "$d/failed" 2>/dev/null)
            read_pids
            if alive "$p" "$pst"; then kill -s KILL -- "-$p" 2>/dev/null; fi
            rm -rf "$d"
            fail 2 "the task's watcher did not start: ${why:-no message}"
        fi
        sleep 0.05
    done
    read_pids
    echo "$p $pst $pb $w $wst $(cat "$d/started")"
    ;;
run) # ID MAX_BYTES FILES_KEPT ARGV...: the task's watcher, a session leader started by start
    id=$1 max=$2 keep=$3
    shift 3
    d=$tasks/$id
    cd "$d" || exit 2
    echo "$$ $(start_ticks $$) $(boot_id)" >pid.tmp && mv -f pid.tmp pid
    if ! mkfifo out.fifo err.fifo; then
        echo "mkfifo failed in $d" >failed
        exit 2
    fi
    stamp stdout "$max" "$keep" <out.fifo &
    stamp stderr "$max" "$keep" <err.fifo &
    setsid sh "$self" "$base" workload "$id" "$@" >out.fifo 2>err.fifo
    code=$?
    read_pids
    [ -z "$w" ] || kill -s KILL -- "-$w" 2>/dev/null # what the workload left in its group
    wait
    rm -f out.fifo err.fifo
    echo "$code $(now)" >exit.tmp && mv -f exit.tmp exit
    ;;
workload) # ID ARGV...: record the pid, enter the environment and become the workload
    d=$tasks/$1
    shift
    echo "$$ $(start_ticks $$)" >"$d/wpid.tmp" && mv -f "$d/wpid.tmp" "$d/wpid"
    IFS= read -r wd <"$d/wd"
    read -r mask <"$d/umask" && umask "$mask"
    cd "$wd" || exit 126
    . "$d/env"
    exec "$@"
    ;;
status) # ID...: one task_state line each
    for id in "$@"; do task_state "$id"; done
    ;;
signal) # ID SIGNAL: send SIGNAL (a name) to the workload's process group
    task_dir "$1"
    read_pids
    if [ ! -e "$d/exit" ] && alive "$w" "$wst"; then
        kill -s "$2" -- "-$w" 2>/dev/null || kill -s "$2" "$w" 2>/dev/null
    fi
    task_state "$1"
    ;;
stats) # ID: "CLK_TCK PAGE_SIZE", then "PID UTIME STIME RSS_PAGES READ_BYTES WRITE_BYTES" for each
    # process of the workload's process group
    task_dir "$1"
    read_pids
    [ ! -e "$d/exit" ] && alive "$w" "$wst" || fail 7 "task $1 is not running"
    echo "$(getconf CLK_TCK 2>/dev/null || echo 100) $(getconf PAGESIZE 2>/dev/null || echo 4096)"
    for f in /proc/[0-9]*/stat; do
        { read -r st <"$f"; } 2>/dev/null || continue
        st=${st##*") "}
        set -- $st
        [ "$3" = "$w" ] || continue
        pid=${f#/proc/}
        pid=${pid%/stat}
        rb=0 wb=0
        if [ -r "/proc/$pid/io" ]; then
            while read -r key value; do
                case $key in read_bytes:) rb=$value ;; write_bytes:) wb=$value ;; esac
            done <"/proc/$pid/io"
        fi 2>/dev/null
        echo "$pid ${12} ${13} ${22} $rb $wb"
    done
    ;;
exec | attach) # ID ARGV...: print "pid PID", then become ARGV in the task's environment, with
    # its output merged (exec) or stderr kept apart (attach: interactive exec)
    task_dir "$1"
    read_pids
    [ ! -e "$d/exit" ] && alive "$w" "$wst" || fail 7 "task $1 is not running"
    shift
    IFS= read -r wd <"$d/wd"
    read -r mask <"$d/umask" && umask "$mask"
    cd "$wd" 2>/dev/null || fail 5 "working directory $wd does not exist on the phone"
    . "$d/env"
    echo "pid $$"
    [ "$cmd" = attach ] && exec "$@"
    exec "$@" 2>&1
    ;;
kill) # PID: SIGKILL an exec'd command's process group (it leads one: see the agent's command)
    case $1 in '' | 0 | *[!0-9]*) fail 2 "kill: want a pid, not '$1'" ;; esac
    kill -s KILL -- "-$1" 2>/dev/null || kill -s KILL "$1" 2>/dev/null
    ;;
fetch) # ID TAIL OUT_GEN OUT_OFFSET ERR_GEN ERR_OFFSET: the task's state (taken first), then
    # the stdout and stderr records after the offsets (see fetch_stream)
    task_dir "$1"
    task_state "$1"
    d=$tasks/$1
    fetch_stream stdout "$3" "$4" "$2"
    fetch_stream stderr "$5" "$6" "$2"
    ;;
destroy) # ID: SIGKILL whatever is left of the task and remove its directory
    d=$tasks/$1
    [ -d "$d" ] || exit 0
    read_pids
    if alive "$w" "$wst"; then kill -s KILL -- "-$w" 2>/dev/null || kill -s KILL "$w"; fi
    if alive "$p" "$pst"; then kill -s KILL -- "-$p" 2>/dev/null || kill -s KILL "$p"; fi
    rm -rf "$d"
    ;;
*)
    fail 2 "unknown command $cmd"
    ;;
esac
