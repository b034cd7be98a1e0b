# The shop's configuration, written into the image root (/opt/kiln/root on the AMI).
class shop (String $greeting) {
  file { ['/opt/kiln/root/conf']:
    ensure => directory,
  }
  file { '/opt/kiln/root/conf/shop.conf':
    ensure  => file,
    mode    => '0644',
    content => "greeting=${greeting}\n",
  }
}
