variable "project" {
  description = "The GCP project ID."
  type        = string
}

variable "stack" {
  description = "The stack's name: the prefix of every resource name."
  type        = string
}

variable "labels" {
  description = "Labels on every resource: stack, managed-by and, for an [env.<name>], environment."
  type        = map(string)
}

variable "network" {
  description = "The VPC network the nodes and firewall rules use."
  type        = string
}

variable "port" {
  description = "The model server's port (serve.port)."
  type        = number
}

variable "health_path" {
  description = "The model server's health path (serve.health_path)."
  type        = string
}

variable "serve_cidrs" {
  description = "Who may reach the port: serve.allow_cidrs, or 0.0.0.0/0 with serve.public = true."
  type        = list(string)
}

variable "ssh_cidrs" {
  description = "Who may reach SSH (serve.ssh_cidrs); empty: nobody."
  type        = list(string)
}

variable "ssh_user" {
  description = "The login user for the stack's SSH key."
  type        = string
}

variable "ssh_public_key" {
  description = "The stack's ed25519 public key (the private key stays in the work dir); empty without serve.ssh_cidrs: no login."
  type        = string
}

variable "ssh_private_key_file" {
  description = "Where the stack's private key is, for the ssh outputs."
  type        = string
}

variable "service_account" {
  description = "Service account email for the nodes; empty: none (no Google API access)."
  type        = string
}

variable "public_ip" {
  description = "Whether each node gets an ephemeral external IP (gcp.public_ip); false: internal address only."
  type        = bool
}

variable "disk_kms_key" {
  description = "Cloud KMS key for the boot disks (gcp.disk_kms_key); null: Google-managed encryption."
  type        = string
}

variable "reference_server" {
  description = "Source of the reference server, shipped when serve.command runs `mlinfra serve`."
  type        = string
}

variable "reference_model" {
  description = "Source of the reference server's model (demand.py), shipped beside it."
  type        = string
}

# -- node-side checks (guest_report.py) --
variable "node_check" {
  description = "The node-side checks' settings (JSON): the nvidia-smi query, health timeout, latency sample."
  type        = string
}
# -- end node-side checks

variable "reference_completions" {
  description = "The reference server's OpenAI-compatible endpoints (completions.py), shipped beside it."
  type        = string
}

variable "reference_textgen" {
  description = "The reference server's language model (textgen.py), shipped beside it."
  type        = string
}

variable "reference_textgen_data" {
  description = "The language model's counts (textgen.json, about 94 KB), shipped beside it."
  type        = string
}

variable "node_config_extra" {
  description = "Fields added to every node's node_config since it first shipped, each only when used: {} or {workload = {image, args, setup, model_uri, model_sha256, model_dir}}."
  type        = any
}

variable "nodes" {
  description = "One entry per node (region x replica), keyed \"<region>-<replica>\"."
  type = map(object({
    region           = string
    replica          = number
    zone             = string
    machine_type     = string
    attached_gpus    = list(object({ type = string, count = number }))
    gpus             = number
    has_gpu          = bool
    spot             = bool
    spot_termination = string
    image            = string
    disk_gb          = number
    disk_type        = string
    secure_boot      = bool
    node_config = object({
      stack       = string
      node        = string
      command     = string
      env         = map(string)
      secrets     = map(string)
      port        = number
      health_path = string
      gpus        = number
    })
  }))
}
