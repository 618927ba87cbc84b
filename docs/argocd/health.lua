-- Argo CD health check for axolotl.ai/AxolotlJob (resource.customizations.health.axolotl.ai_AxolotlJob).
-- It reads the same kstatus conditions Flux reads: Stalled=True is Degraded, Ready=True is Healthy,
-- phase Suspended is Suspended (Argo CD's own state for paused work); everything else is Progressing.
-- Tested with gopher-lua, the Lua VM Argo CD runs, against real AxolotlJobs (hack/gitops-health).
local hs = {status = "Progressing", message = "Waiting for the operator to report a status"}
if obj.status == nil then
  return hs
end
local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= nil and obj.status.observedGeneration < generation then
  hs.message = "Waiting for the operator to observe the latest spec"
  return hs
end
local message = obj.status.message or ""
local stalled, ready = condition("Stalled"), condition("Ready")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = message ~= "" and message or stalled.message
elseif ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = message ~= "" and message or ready.message
elseif obj.status.phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message
else
  hs.message = (obj.status.phase or "Pending") .. ((obj.status.reason and (" (" .. obj.status.reason .. ")")) or "")
  if message ~= "" then
    hs.message = hs.message .. ": " .. message
  end
end
return hs
