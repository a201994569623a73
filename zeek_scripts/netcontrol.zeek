##! A NetControl plugin that hands address drops to the seqwatch sidecar.
##!
##! Opt-in: ``@load seqwatch/netcontrol``, then activate the plugin in
##! ``NetControl::init`` (see docs/mitigation.md):
##!
##!     event NetControl::init()
##!         {
##!         NetControl::activate(SeqWatch::netcontrol_plugin(), 0);
##!         }
##!
##! The plugin accepts NetControl DROP rules whose entity is a single address
##! (``NetControl::drop_address``, catch-and-release, ``Notice::ACTION_DROP``) and
##! publishes them to :zeek:see:`SeqWatch::netcontrol_topic`. The sidecar's enforcer
##! applies them with iptables/ipset under its own safety policy (allowlist, caps,
##! rate limit) and answers on :zeek:see:`SeqWatch::netcontrol_reply_topic`; the
##! answers become NetControl's rule_added / rule_exists / rule_removed /
##! rule_error, so ``netcontrol.log`` shows what really happened. Other rule types
##! and entities are declined, so NetControl offers them to other plugins. Rule
##! expiry stays with NetControl (``can_expire = F``): it asks the plugin to remove
##! a rule when its interval is over, and the sidecar also gives every ipset entry
##! a timeout, so no block outlives a lost Zeek.

@load base/frameworks/netcontrol

module SeqWatch;

export {
	## Topic the plugin publishes rule requests to; the sidecar subscribes to it.
	const netcontrol_topic = "/seqwatch/netcontrol" &redef;

	## Topic the sidecar publishes its answers to; the plugin subscribes to it.
	## It must not start with :zeek:see:`SeqWatch::netcontrol_topic`, or the
	## sidecar, subscribed to that prefix, would receive its own answers.
	const netcontrol_reply_topic = "/seqwatch/replies/netcontrol" &redef;

	## How long to wait for the sidecar's answer before the rule is reported as
	## failed (rule_error) in netcontrol.log.
	const netcontrol_reply_timeout = 30sec &redef;

	## The part of a :zeek:type:`NetControl::Rule` the sidecar needs. It travels
	## as a positional vector, so fields are only ever appended.
	type NetControlRule: record {
		## NetControl's rule id (``r$id``); answers refer to the rule by it.
		id: string;
		## Always ``NetControl::DROP`` (the plugin declines other types).
		ty: NetControl::RuleType;
		## Always ``NetControl::ADDRESS``.
		entity_type: NetControl::EntityType;
		## The address to drop, as a /32 or /128 subnet.
		ip: subnet;
		## Requested duration; ``0 secs`` when the rule has none.
		expire: interval;
		## The rule's priority, for the audit log.
		priority: int;
		## Where the rule came from (``r$location``), for the audit log.
		location: string;
	};

	## Requests, published to :zeek:see:`SeqWatch::netcontrol_topic`. ``id``
	## identifies the plugin instance that sent them.
	global netcontrol_add_rule: event(id: count, r: NetControlRule);
	global netcontrol_remove_rule: event(id: count, r: NetControlRule,
	    reason: string);

	## Answers from the sidecar, received on
	## :zeek:see:`SeqWatch::netcontrol_reply_topic`; ``r`` echoes the request.
	global netcontrol_rule_added: event(id: count, r: NetControlRule, msg: string);
	global netcontrol_rule_exists: event(id: count, r: NetControlRule,
	    msg: string);
	global netcontrol_rule_removed: event(id: count, r: NetControlRule,
	    msg: string);
	global netcontrol_rule_error: event(id: count, r: NetControlRule, msg: string);

	## Creates a plugin instance, to pass to :zeek:see:`NetControl::activate`.
	global netcontrol_plugin: function(): NetControl::PluginState;
}

redef record NetControl::PluginState += {
	## Set by :zeek:see:`SeqWatch::netcontrol_plugin`.
	seqwatch_id: count &optional;
};

# Plugin instances by id, the rules handed to the sidecar (until it confirms their
# removal or reports an error) and the requests still waiting for an answer.
global instances: table[count] of NetControl::PluginState;
global sent: table[count, string] of NetControl::Rule;
global awaiting: table[count, string] of string;
global next_id: count = 0;

global reply_overdue: event(id: count, rule_id: string, op: string);

# Cluster::publish reaches WebSocket clients on every cluster backend (Zeek 7.1+,
# required on 8.x with ZeroMQ); Zeek 7.0 LTS only has Broker::publish.
@if ( Version::number >= 70100 )
function send_request(id: count, wire: NetControlRule, op: string,
    reason: string)
	{
	if ( op == "add" )
		Cluster::publish(netcontrol_topic, netcontrol_add_rule, id, wire);
	else
		Cluster::publish(netcontrol_topic, netcontrol_remove_rule, id, wire, reason);
	}

function subscribe_replies()
	{
	Cluster::subscribe(netcontrol_reply_topic);
	}
@else
function send_request(id: count, wire: NetControlRule, op: string,
    reason: string)
	{
	if ( op == "add" )
		Broker::publish(netcontrol_topic, netcontrol_add_rule, id, wire);
	else
		Broker::publish(netcontrol_topic, netcontrol_remove_rule, id, wire, reason);
	}

function subscribe_replies()
	{
	Broker::subscribe(netcontrol_reply_topic);
	}
@endif

function publish_request(id: count, r: NetControl::Rule, op: string,
    reason: string)
	{
	local wire = NetControlRule($id=r$id, $ty=r$ty, $entity_type=r$entity$ty,
	    $ip=r$entity$ip, $expire=r?$expire ? r$expire : 0secs,
	    $priority=r$priority, $location=r?$location ? r$location : "");
	send_request(id, wire, op, reason);
	awaiting[id, r$id] = op;
	schedule netcontrol_reply_timeout { reply_overdue(id, r$id, op) };
	}

event reply_overdue(id: count, rule_id: string, op: string)
	{
	if ( [id, rule_id] !in awaiting || awaiting[id, rule_id] != op )
		return;

	delete awaiting[id, rule_id];
	local r = sent[id, rule_id];
	delete sent[id, rule_id];
	event NetControl::rule_error(r, instances[id], fmt(
	    "no answer from the seqwatch sidecar within %s",
	    netcontrol_reply_timeout));
	}

function is_single_address(s: subnet): bool
	{
	return subnet_width(s) == ( is_v4_subnet(s) ? 32 : 128 );
	}

function plugin_add_rule(p: NetControl::PluginState, r: NetControl::Rule): bool
	{
	if ( r$ty != NetControl::DROP
	    || r$entity$ty != NetControl::ADDRESS
	    || ! r$entity?$ip )
		return F;

	if ( ! is_single_address(r$entity$ip) )
		{
		# Accepted only to say why not: the enforcer's sets hold single addresses,
		# and a wide drop is exactly what its safety policy is there to prevent.
		event NetControl::rule_error(r, p, fmt(
		    "seqwatch blocks single addresses only, not %s",
		    r$entity$ip));
		return T;
		}

	sent[p$seqwatch_id, r$id] = r;
	publish_request(p$seqwatch_id, r, "add", "");
	return T;
	}

function plugin_remove_rule(p: NetControl::PluginState, r: NetControl::Rule,
    reason: string): bool
	{
	if ( [p$seqwatch_id, r$id] !in sent )
		return F;

	publish_request(p$seqwatch_id, r, "remove", reason);
	return T;
	}

# Looks up the rule an answer refers to; F (with a reporter warning) when the
# answer is unexpected, e.g. late after a timeout or from an earlier Zeek run.
function expected(id: count, rule_id: string, what: string): bool
	{
	if ( id in instances && [id, rule_id] in sent )
		return T;

	Reporter::warning(fmt("seqwatch netcontrol: ignoring %s for unknown rule %s",
	    what, rule_id));
	return F;
	}

event netcontrol_rule_added(id: count, r: NetControlRule, msg: string)
	{
	if ( ! expected(id, r$id, "rule_added") )
		return;

	delete awaiting[id, r$id];
	event NetControl::rule_added(sent[id, r$id], instances[id], msg);
	}

event netcontrol_rule_exists(id: count, r: NetControlRule, msg: string)
	{
	if ( ! expected(id, r$id, "rule_exists") )
		return;

	delete awaiting[id, r$id];
	event NetControl::rule_exists(sent[id, r$id], instances[id], msg);
	}

event netcontrol_rule_removed(id: count, r: NetControlRule, msg: string)
	{
	if ( ! expected(id, r$id, "rule_removed") )
		return;

	delete awaiting[id, r$id];
	local rule = sent[id, r$id];
	delete sent[id, r$id];
	event NetControl::rule_removed(rule, instances[id], msg);
	}

event netcontrol_rule_error(id: count, r: NetControlRule, msg: string)
	{
	if ( ! expected(id, r$id, "rule_error") )
		return;

	delete awaiting[id, r$id];
	local rule = sent[id, r$id];
	# A refused add or a failed remove ends seqwatch's part in the rule either way.
	delete sent[id, r$id];
	event NetControl::rule_error(rule, instances[id], msg);
	}

# NetControl forgets a rule without asking the plugin when it expires a rule the
# sidecar reported as already existing; forget it here too.
event NetControl::rule_destroyed(r: NetControl::Rule)
	{
	for ( id in instances )
		{
		delete sent[id, r$id];
		delete awaiting[id, r$id];
		}
	}

function plugin_name(p: NetControl::PluginState): string
	{
	return fmt("SeqWatch-%s", netcontrol_topic);
	}

function plugin_init(p: NetControl::PluginState)
	{
	subscribe_replies();
	NetControl::plugin_activated(p);
	}

global backend = NetControl::Plugin($name=plugin_name, $can_expire=F,
    $init=plugin_init, $add_rule=plugin_add_rule,
    $remove_rule=plugin_remove_rule);

function netcontrol_plugin(): NetControl::PluginState
	{
	local p = NetControl::PluginState($plugin=backend, $seqwatch_id=next_id);
	instances[next_id] = p;
	++next_id;
	return p;
	}
