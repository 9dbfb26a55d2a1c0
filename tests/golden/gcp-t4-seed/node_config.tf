# What runs on a node. A change replaces the VM (disposable by design) instead of leaving the
# old process running under new metadata until some later reboot (main.tf: replace_triggered_by).
#
# Because a change replaces every VM, node_config must not change when mlinfra does: fields added
# after it first shipped come in var.node_config_extra, only when the stack uses them, and are
# merged in here. A stack that uses none keeps the node_config value (and type) it had before,
# so upgrading mlinfra replaces nothing (tests/targets/gcp/test_module_upgrade.py).
locals {
  node_config = { for key, node in var.nodes : key => merge(node.node_config, var.node_config_extra) }
}

resource "terraform_data" "node_config" {
  for_each = var.nodes

  input = local.node_config[each.key]
}
