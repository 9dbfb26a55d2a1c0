# Where each node is reached: its external IP, or its internal one with gcp.public_ip = false
# (then the endpoints below answer only from inside the VPC: a VPN, Interconnect or a bastion).
locals {
  address = {
    for key, node in google_compute_instance.node :
    key => try(node.network_interface[0].access_config[0].nat_ip, node.network_interface[0].network_ip)
  }
}

# creation_timestamp (RFC 3339): `mlinfra cost` counts each node's running time from it.
output "nodes" {
  description = "Each node's zone, addresses, endpoint, health URL, SSH target and creation time."
  value = {
    for key, node in google_compute_instance.node : key => {
      name               = node.name
      region             = var.nodes[key].region
      replica            = var.nodes[key].replica
      zone               = node.zone
      machine_type       = node.machine_type
      creation_timestamp = node.creation_timestamp
      spot               = var.nodes[key].spot
      internal_ip        = node.network_interface[0].network_ip
      external_ip        = try(node.network_interface[0].access_config[0].nat_ip, null)
      endpoint           = "http://${local.address[key]}:${var.port}"
      health_url         = "http://${local.address[key]}:${var.port}${var.health_path}"
      ssh                = "${var.ssh_user}@${local.address[key]}"
      ssh_key            = var.ssh_private_key_file
    }
  }
}
