output "nodes" {
  description = "Each node's zone, addresses, endpoint, health URL and SSH target."
  value = {
    for key, node in google_compute_instance.node : key => {
      name         = node.name
      region       = var.nodes[key].region
      replica      = var.nodes[key].replica
      zone         = node.zone
      machine_type = node.machine_type
      spot         = var.nodes[key].spot
      internal_ip  = node.network_interface[0].network_ip
      external_ip  = node.network_interface[0].access_config[0].nat_ip
      endpoint     = "http://${node.network_interface[0].access_config[0].nat_ip}:${var.port}"
      health_url   = "http://${node.network_interface[0].access_config[0].nat_ip}:${var.port}${var.health_path}"
      ssh          = "${var.ssh_user}@${node.network_interface[0].access_config[0].nat_ip}"
      ssh_key      = var.ssh_private_key_file
    }
  }
}
