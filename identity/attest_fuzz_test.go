package identity

import (
	"regexp"
	"strings"
	"testing"
)

var (
	canonicalUID = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
	canonicalCID = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// FuzzParseCgroupLine checks the /proc/PID/cgroup line parser that ties a
// process to a pod: an accepted line yields a canonical pod UID (and a
// 64-hex container ID or none), and nothing a process creates below its
// own pod cgroup (cgroup v2 delegation lets a container make children)
// can change which pod it is attested as.
func FuzzParseCgroupLine(f *testing.F) {
	const uid = "2c48913c-b29f-11e7-9350-020968147796"
	const sysUID = "2c48913c_b29f_11e7_9350_020968147796"
	const cid = "9bca8d63d5fa610783847915bcff0ecac1273e5b4bed3f6fa1b07350e0135961"
	for _, s := range []string{
		"11:memory:/kubepods/burstable/pod" + uid + "/" + cid,
		"4:cpu,cpuacct:/kubepods/pod" + uid + "/" + cid,
		"0::/kubepods/besteffort/pod" + uid + "/" + cid,
		"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + sysUID + ".slice/cri-containerd-" + cid + ".scope",
		"1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + sysUID + ".slice/crio-" + cid + ".scope",
		"0::/kubepods.slice/kubepods-pod" + sysUID + ".slice/docker-" + cid + ".scope",
		"0::/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod" + sysUID + ".slice/cri-containerd-" + cid + ".scope",
		"0::/kubepods.slice/kubepods-pod" + sysUID + ".slice",
		"0::/user.slice/user-1000.slice/session-3.scope",
		"0::/system.slice/docker-" + cid + ".scope",
		"0::/kubepods/burstable/pod" + uid + "/" + cid + "/pod11111111-2222-3333-4444-555555555555",
		"0::/kubepods/podX" + uid,
		"no colons",
	} {
		f.Add(s)
	}
	const evil = "11111111-2222-3333-4444-555555555555"
	f.Fuzz(func(t *testing.T, line string) {
		podUID, containerID, ok := ParseCgroupLine(line)
		if !ok {
			if podUID != "" || containerID != "" {
				t.Fatalf("rejected line returned %q %q", podUID, containerID)
			}
			return
		}
		if !canonicalUID.MatchString(podUID) {
			t.Fatalf("pod UID %q is not canonical", podUID)
		}
		if containerID != "" && !canonicalCID.MatchString(containerID) {
			t.Fatalf("container ID %q is not 64 hex digits", containerID)
		}
		if !strings.Contains(line, "kubepods") {
			t.Fatalf("accepted a line outside kubepods: %q", line)
		}
		if strings.ContainsAny(line, "\n") {
			return // not one line of /proc/PID/cgroup
		}
		// Why: a container that can write its cgroup (v2 delegation)
		// can create children named like another pod. The pod is the
		// one the kubelet placed it in, never one named below it.
		for _, child := range []string{"/pod" + evil, "/kubepods/pod" + evil + "/" + cid, "/kubepods-pod" + strings.ReplaceAll(evil, "-", "_") + ".slice"} {
			got, _, ok := ParseCgroupLine(line + child)
			if !ok || got != podUID {
				t.Fatalf("child cgroup %q moved %q from pod %s to %q (ok=%v)", child, line, podUID, got, ok)
			}
		}
	})
}
