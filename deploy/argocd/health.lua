-- Argo CD health check for tierserve.io/ModelTier (resource.customizations.health.tierserve.io_ModelTier).
--
-- The operator writes status only: status.observedGeneration, and the conditions Ready,
-- Progressing and Degraded, each with a reason and a message. A status about an older
-- generation says nothing about the current spec, so that comes first.
local hs = {}

local function find_condition(status, condition_type)
  if status.conditions == nil then
    return nil
  end
  for _, condition in ipairs(status.conditions) do
    if condition.type == condition_type then
      return condition
    end
  end
  return nil
end

local generation = 0
if obj.metadata ~= nil and obj.metadata.generation ~= nil then
  generation = obj.metadata.generation
end

if obj.status == nil or obj.status.observedGeneration == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the tierserve operator to reconcile the ModelTier"
  return hs
end

if obj.status.observedGeneration < generation then
  hs.status = "Progressing"
  hs.message = string.format(
    "Waiting for the tierserve operator to reconcile generation %d (status is about generation %d)",
    generation, obj.status.observedGeneration)
  return hs
end

local degraded = find_condition(obj.status, "Degraded")
if degraded ~= nil and degraded.status == "True" then
  hs.status = "Degraded"
  hs.message = degraded.message or degraded.reason or "Degraded"
  return hs
end

local ready = find_condition(obj.status, "Ready")
if ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Ready"
  return hs
end

hs.status = "Progressing"
if ready ~= nil and ready.message ~= nil and ready.message ~= "" then
  hs.message = ready.message
else
  hs.message = "Waiting for the ModelTier to become Ready"
end
return hs
