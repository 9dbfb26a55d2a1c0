# Zone fallback's record, in the state: each node that a stockout sent to another zone of its
# region (`mlinfra up`), with the zone it left (from) and the zone it runs in (to). The work dir
# that made the move keeps its own record (zone-moves.json); a fresh one (a CI checkout) takes the
# moves from here (adopt.py), and only these: a node found elsewhere without one was placed by an
# earlier gcp.zones, and goes where the stack places it now, as it would from the first work dir.
# A resource of its own that nothing watches: it never changes a VM, and a stack without moves
# has none (so an upgrade of mlinfra adds nothing). The serve-gcp module renders this file too
# (its driver's shared_templates), for its heads.

variable "zone_fallbacks" {
  description = "Nodes zone fallback moved, by node key: {from = the zone it left, to = the zone it runs in}; {} without moves."
  type        = map(object({ from = string, to = string }))
}

resource "terraform_data" "zone_fallback" {
  for_each = var.zone_fallbacks

  input = each.value
}
