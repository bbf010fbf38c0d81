package agent_policy

# VEIL-PLACEHOLDER-POLICY: the baseline Kata agent policy the overlays ship with. It refuses to
# create any container, so an overlay applied before its policy was generated fails closed (the
# pod never starts). Replace it with the output of genpolicy for the rendered manifests, reviewed,
# keeping the two load-bearing defaults below (docs/scale-out.md section 4):
#   deploy/scripts/initdata.py encode deploy/overlays/<overlay> --policy <generated.rego>

default CreateContainerRequest := false

# Load-bearing: the host may never run a process in the confidential VM...
default ExecProcessRequest := false
# ...nor replace this policy after launch (the initdata digest in the quote would then describe
# a policy that is no longer enforced).
default SetPolicyRequest := false

# No host-initiated file copies, stdin writes, pausing or tracing.
default CopyFileRequest := false
default WriteStreamRequest := false
default PauseContainerRequest := false
default ResumeContainerRequest := false
default StartTracingRequest := false
default StopTracingRequest := false

# Container logs: Veil logs ids, counts and timings, never prompt or completion text.
default ReadStreamRequest := true

# Sandbox life cycle and housekeeping.
default AddARPNeighborsRequest := true
default CloseStdinRequest := true
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default GetMetricsRequest := true
default GetOOMEventRequest := true
default GuestDetailsRequest := true
default ListInterfacesRequest := true
default ListRoutesRequest := true
default MemHotplugByProbeRequest := true
default OnlineCPUMemRequest := true
default PullImageRequest := true
default RemoveContainerRequest := true
default RemoveStaleVirtiofsShareMountsRequest := true
default ReseedRandomDevRequest := true
default SetGuestDateTimeRequest := true
default SignalProcessRequest := true
default StartContainerRequest := true
default StatsContainerRequest := true
default TtyWinResizeRequest := true
default UpdateContainerRequest := true
default UpdateEphemeralMountsRequest := true
default UpdateInterfaceRequest := true
default UpdateRoutesRequest := true
default WaitProcessRequest := true
